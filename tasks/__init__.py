"""tasks/: the Prefect tasks the flows use, each a thin, logged step over infra/ (the agent
task's steps in `agent_task`, the Markdown of their artifacts in `artifacts`, destroying a
sandbox in `sandbox`, building an image in `image`); no task here goes unused. It may import
prefect, infra/, orchestration/ and blocks/; never flows or cli.
"""
