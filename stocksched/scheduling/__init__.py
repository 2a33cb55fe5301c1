"""The scheduler: ``timetable`` decides when slots fire, ``runs`` lives each run on the
worker threads, ``scheduler.JobScheduler`` holds the thread, the lock and the operator
actions over both."""
