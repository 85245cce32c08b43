"""``python -m chatbot`` runs the ``recchat`` command line."""

from chatbot.cli import main

main()
