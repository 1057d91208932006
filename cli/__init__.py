"""The paramgroups command line (installed as ``paramgroups.cli``)."""
