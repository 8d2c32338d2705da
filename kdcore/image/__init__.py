"""Image tasks (classification, regression): data and its sources, augmentation,
streaming, the teacher's outputs and store, the task the loop trains (trainer.py), the
run (run.py), its report and exports."""
