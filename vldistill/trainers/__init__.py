"""The science: teachers, students, losses, data, evaluation, the training loop. Never imports ray."""
