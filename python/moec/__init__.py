"""Python client of moec (docs/python.md): submit recipes to a coordinator, follow jobs, read
their reports.

    import moec
    c = moec.Client("127.0.0.1:7000", token_file="client.tok")
    job = c.submit("recipes/mc-moe-2.0.yaml")
    for event in c.watch(job):
        print(event)
    c.report(job)
"""
from moec.client import Client, Event, Job, MoecError, Worker

__all__ = ["Client", "Event", "Job", "MoecError", "Worker"]
