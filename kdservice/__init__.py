"""kdservice: the Python client (`kdservice.client`) of the knowledge-distillation service."""
