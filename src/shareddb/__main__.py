"""`python -m shareddb` runs the command line, as the `shareddb` console script does."""

from shareddb.cli import main

main()
