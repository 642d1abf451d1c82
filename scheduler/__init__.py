"""The embedded scheduler: the platform's cleanup and reminder jobs, once per tick across workers.

`scheduler.runs.run_job_now` runs a job by hand (CLI, HTTP); `scheduler.service.JobScheduler`
fires them on their crontab inside the daemon. Jobs only write rows or outbox events.
"""
