"""The dashboard: a push list, job and partition pages and their live updates (`infrax web`)."""
