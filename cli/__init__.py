"""The paramgroups command line: ``paramgroups.cli`` once installed (pyproject.toml maps this
folder there); from a source checkout, ``paramgroups/__init__.py`` registers it under that name."""
