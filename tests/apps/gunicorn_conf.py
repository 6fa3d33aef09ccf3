"""gunicorn settings of the multiprocess metrics test: the child_exit hook ssesup documents."""

from ssesup.metrics import gunicorn_child_exit

child_exit = gunicorn_child_exit
