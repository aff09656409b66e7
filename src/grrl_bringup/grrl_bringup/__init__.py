"""grrl_bringup: node list, launch and parameter files, the ``grrl`` CLI, composed runner."""
