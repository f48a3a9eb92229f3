"""The nrrstore command line (Typer). Installed as the import package `nrrstore_cli`."""
