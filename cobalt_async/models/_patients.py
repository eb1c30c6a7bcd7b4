"""Patients and their EHR tasks, as a live fetch (``POST /v1/patients/fetch``) reports them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import Field

from ._base import LaxStr, OpenModel

# Where a top-level task may name its patient; Cobalt documents none of them.
_PATIENT_KEYS = ("patient_mrn", "mrn", "patient_id")


class PatientTask(OpenModel):
    """
    A task in the patient's EHR chart, whoever created it (clinic staff or Cobalt).

    Only ``emr_task_id`` is documented; every other field Cobalt sends is kept as it came
    (``model_extra``, or attribute access).
    """

    emr_task_id: LaxStr
    """The EHR's id of the task: pass it to ``client.tasks.notes.create()``."""


class Patient(OpenModel):
    """A patient found by a live fetch; fields beyond the documented ones are kept as sent."""

    id: LaxStr | None = None
    """Cobalt's id of the patient."""
    mrn: LaxStr | None = None
    first_name: str | None = None
    last_name: str | None = None
    date_of_birth: str | None = None
    """``YYYY-MM-DD`` as Cobalt sent it."""
    tasks: list[PatientTask] = Field(default_factory=list)
    """The patient's EHR tasks, when the fetch asked for ``include=["tasks"]``."""


def gather_tasks(data: Mapping[str, Any]) -> Mapping[str, Any]:
    """
    *data* of a live fetch with ``tasks`` listing every task, and each top-level task that
    names its patient (``patient_mrn``, ``mrn`` or ``patient_id``) under that patient too.
    """
    patients, top = data.get("patients"), data.get("tasks")
    if not isinstance(patients, list) or not all(isinstance(p, Mapping) for p in patients):
        return data  # not a listing of patients: validation says what is wrong
    top = top if isinstance(top, list) else []
    patients = [dict(patient) for patient in patients]
    for task in top:
        for patient in patients:
            if isinstance(task, Mapping) and _names(task, patient):
                if task not in _tasks_of(patient):
                    patient["tasks"] = [*_tasks_of(patient), task]
    nested = [task for patient in patients for task in _tasks_of(patient)]
    # A task Cobalt lists both ways is one task.
    every = nested + [task for task in top if task not in nested]
    return {**data, "patients": patients, "tasks": every}


def _tasks_of(patient: Mapping[str, Any]) -> list[Any]:
    tasks = patient.get("tasks")
    return tasks if isinstance(tasks, list) else []


def _names(task: Mapping[str, Any], patient: Mapping[str, Any]) -> bool:
    for key in _PATIENT_KEYS:
        named = task.get(key)
        own = patient.get("id" if key == "patient_id" else "mrn")
        if named is not None and own is not None and str(named) == str(own):
            return True
    return False
