"""flows/: the Prefect flows, the pipelines that read like fluid's mission: the agent task
(`agent_task`: prepare a sandbox, then propose, decide, apply; `approval` is the decide
step's form and review), the janitor (`janitor`), the golden image (`golden_image`) and the
copy of a published image to a host (`image_sync`).
Flows only compose: the work is in tasks/ and infra/, configuration comes from blocks/, and
a run's record is kept through infra.records.runs.RunRecorder. It may import prefect, infra/,
orchestration/, blocks/ and tasks/; never cli (deployments in prefect.yaml name flows by
entrypoint).
"""
