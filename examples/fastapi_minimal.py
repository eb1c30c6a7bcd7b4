"""
The README's FastAPI service: create a task in the EHR and answer once its webhook came back.

    uvicorn examples.fastapi_minimal:app --port 8000

Set COBALT_CLIENT_ID, COBALT_CLIENT_SECRET, COBALT_ACCESS_TOKEN and COBALT_WEBHOOK_SECRET
first; its tests (tests/testing/test_app_with_fake.py) run it against FakeCobalt instead.
"""

from fastapi import FastAPI
from pydantic import BaseModel

from cobalt_async import InMemorySink
from cobalt_async.fastapi import CobaltDep, cobalt_lifespan, webhook_router

# Credentials from COBALT_CLIENT_ID, COBALT_CLIENT_SECRET, COBALT_ACCESS_TOKEN; webhooks are
# verified with COBALT_WEBHOOK_SECRET. One worker: InMemorySink(); several: redis_url=...
app = FastAPI(lifespan=cobalt_lifespan(sink=InMemorySink()))
app.include_router(webhook_router("/webhooks/cobalt"))  # the URL you give Cobalt


class NewTask(BaseModel):
    patient_mrn: str
    description: str


@app.post("/tasks")
async def create_task(task: NewTask, client: CobaltDep) -> dict[str, str]:
    handle = await client.tasks.create(patient_mrn=task.patient_mrn, description=task.description)
    event = await handle.wait(timeout=60)  # resolved by the webhook route above
    return {"job_id": handle.job_id, "emr_task_id": event.data.emr_task_id}
