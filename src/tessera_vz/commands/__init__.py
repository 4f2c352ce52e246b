"""The commands of ``tessera-vz``, one module each, imported only when they run.

:mod:`tessera_vz.cli` parses the arguments and calls ``cmd_*(args)`` of the
module named by the subcommand; :mod:`.common` holds what several commands
share (consoles, progress bars, read options, checks made before reading).
"""
