"""The executioner: talks to agents, keeps logs, reports run status."""
