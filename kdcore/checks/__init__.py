"""What the service and the CLI call before a job runs: validation, cost, sweep plans,
the files a spec names."""
