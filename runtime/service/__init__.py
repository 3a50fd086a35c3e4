"""What a service needs around ``Outpainter``: the job model (records, queue, worker, resume after a crash)."""
