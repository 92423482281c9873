"""What a stock Treeherder (and anything else that reads Taskcluster) sees of infrax: the job
master speaks to it the way Taskcluster does, so Treeherder needs no change. One module per
mapping (docs/code-hosts.md says it for operators):

| module            | maps                                                                  |
|-------------------|-----------------------------------------------------------------------|
| `queue_tasks`     | a partition as a Taskcluster task, a partition's run as a task run    |
| `task_runs`       | partition statuses to the runs they make, kept so every message has all its runs' times |
| `reporter`        | those runs to the queue's exchanges and to Treeherder's pulse job messages |
| `queue_api`       | the read-only queue API Treeherder fetches definitions, artifacts and logs from |
| `github_events`   | a GitHub push or pull request as taskcluster-github announces it      |
| `pushes`          | every push (GitHub, hg, `infrax push`) announced once on infrax's push exchange |
| `error_summary`   | a failed run's failing tests as mozlog's errorsummary and log lines Treeherder's parser reads |
"""
