"""The ``conveyor demo`` workload: example jobs and a live progress view."""
