"""What users run on top of the service: the ``anonymixer`` command (``serve``, ``demo``)."""
