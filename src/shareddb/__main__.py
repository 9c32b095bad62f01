"""`python -m shareddb` runs the command line, as the `shareddb` console script does."""

from shareddb.console import main

main()
