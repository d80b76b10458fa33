"""distill: Lightning systems and data modules for teacher training and teacher->student distillation."""
