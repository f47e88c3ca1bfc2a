"""The pipeline's steps, a sub-package of the app."""
