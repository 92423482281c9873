"""infrax: a continuous-integration task-execution system."""
