"""FakeCobalt's EHR: patients, their tasks, and the live fetch's checks and search."""

from __future__ import annotations

import re
from typing import Any

from ._wire import is_day

# Cobalt's own messages where its documents quote them (cobalt-api.md §5).
_FETCH_FIELDS = frozenset(
    {"search_by", "dob", "first_name", "last_name", "phone", "mrn", "include"}
)
_MODES: dict[str, tuple[str, ...]] = {
    "dob": ("dob",),
    "name": ("first_name", "last_name"),
    "phone": ("phone",),
    "mrn": ("mrn",),
}
_INCLUDES = frozenset({"tasks", "insurances"})
_PHONE = re.compile(r"\d{3}-\d{3}-\d{4}")
# What a patient record is searched by, under the name its fetch parameter has.
_SEARCHED = {"dob": "date_of_birth", "first_name": "first_name", "last_name": "last_name"}


class PatientDirectory:
    """The simulated EHR's patients by MRN, and every task it holds by ``emr_task_id``."""

    def __init__(self) -> None:
        self._patients: dict[str, dict[str, Any]] = {}
        self._tasks: dict[str, dict[str, Any]] = {}
        self._next_patient = 1

    def __contains__(self, emr_task_id: object) -> bool:
        return emr_task_id in self._tasks

    def add_patient(self, mrn: str, **fields: Any) -> dict[str, Any]:
        """The patient with *mrn*, created with *fields* (or updated by them)."""
        patient = self._patients.get(mrn)
        if patient is None:
            patient = {"id": f"pat_{self._next_patient}", "mrn": mrn}
            self._next_patient += 1
            self._patients[mrn] = patient
        patient.update({key: value for key, value in fields.items() if value is not None})
        return patient

    def add_task(self, emr_task_id: str, mrn: str | None, **fields: Any) -> None:
        """Hold a task, on the chart of the patient with *mrn* (created if new) if given."""
        if mrn is not None:
            self.add_patient(mrn)
        task = {"emr_task_id": emr_task_id, **fields}
        self._tasks[emr_task_id] = {**task, "_mrn": mrn}

    def forget_task(self, emr_task_id: str) -> None:
        self._tasks.pop(emr_task_id, None)

    def search(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        """The patients a valid fetch *body* finds, with what it asked to include."""
        include = _include(body.get("include"))
        wanted = {name: body[name] for name in (*_SEARCHED, "phone", "mrn") if name in body}
        found = []
        for patient in self._patients.values():
            if all(_matches(patient, name, value) for name, value in wanted.items()):
                found.append(self._with(patient, include))
        return found

    def _with(self, patient: dict[str, Any], include: set[str]) -> dict[str, Any]:
        result = dict(patient)
        if "tasks" in include:
            result["tasks"] = [
                {key: value for key, value in task.items() if key != "_mrn"}
                for task in self._tasks.values()
                if task["_mrn"] == patient["mrn"]
            ]
        if "insurances" in include:
            result["insurances"] = []
        return result


def fetch_problem(body: dict[str, Any]) -> str | None:
    """What Cobalt would answer 400 about a live fetch *body*, or ``None``."""
    unexpected = sorted(set(body).difference(_FETCH_FIELDS))
    if unexpected:
        return f"Unexpected fields in request body: {', '.join(unexpected)}"
    mode = body.get("search_by")
    if mode is None:
        return "Missing required parameters: search_by."
    if mode not in _MODES:
        return f"Invalid search_by. Use one of: {', '.join(_MODES)}."
    if not any(isinstance(body.get(name), str) and body[name] for name in _MODES[mode]):
        needed = ", ".join(_MODES[mode])
        return f"At least one of the following parameters must be provided: {needed}."
    for name in ("first_name", "last_name", "mrn"):
        if name in body and not isinstance(body[name], str):
            return f"{name} must be a string"
    if "dob" in body and not is_day(body["dob"]):
        return "Invalid dob format. Use YYYY-MM-DD."
    if "phone" in body and not (isinstance(body["phone"], str) and _PHONE.fullmatch(body["phone"])):
        return "Invalid phone format. Use XXX-XXX-XXXX."
    if "include" in body and _include(body["include"]) - _INCLUDES:
        return f"Invalid include. Supported values: {', '.join(sorted(_INCLUDES))}."
    return None


def _include(value: object) -> set[str]:
    """``include`` as a set: Cobalt takes a list or a comma-separated string."""
    if isinstance(value, str):
        return {part.strip() for part in value.split(",")}
    if isinstance(value, list):
        return {item if isinstance(item, str) else repr(item) for item in value}
    return set() if value is None else {repr(value)}


def _matches(patient: dict[str, Any], name: str, value: str) -> bool:
    own = patient.get(_SEARCHED.get(name, name))
    if name in ("first_name", "last_name"):
        return isinstance(own, str) and own.casefold() == value.casefold()
    return own == value
