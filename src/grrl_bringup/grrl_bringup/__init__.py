"""grrl_bringup: the node list, launch files, parameter files, the ``grrl`` CLI and composed runner."""
