"""The job queue: jobs lined up to run one after another, without the browser.

  entries.py  what the queue file holds: the entries (frozen settings, status, chain link) and the settings
  store.py    the file itself (read, changed under a mutex, nonsense set aside) and the operations on it:
              add, remove, move, pause, resume, on-failure, retry, stop
  chain.py    a dataset's preparation and training queued as a chain (tag -> clean -> cache -> train)
  schedule.py the rules: what a finished run means for its entry, which entry may start now
  runner.py   the process that runs the queue (`python -m core queue run`), its lock, ensure_runner()
  cli.py      `python -m core queue ...`
"""
