"""Thin adapters that bring the SafeNeuron core to host frameworks.

Installed as ``safeneuron_plugins.integrations``: ``hf`` (Trainer / trl callback), ``axolotl``
(plugin) and ``llamafactory`` (training stage, CLI and web UI). Each imports the core and its own
framework only.
"""
