"""Running a job: the entry points (run, distill, train: entry.py), several ranks
(distributed.py), sweeps."""
