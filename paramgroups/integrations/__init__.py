"""Optional integrations with trainers. Importing paramgroups never imports them; each module
imports its framework when it is imported itself:

- :mod:`paramgroups.integrations.lightning`: ``PlanCallback`` for Lightning's ``Trainer``;
- :mod:`paramgroups.integrations.huggingface`: ``optimizers()`` for transformers' ``Trainer``.
"""
