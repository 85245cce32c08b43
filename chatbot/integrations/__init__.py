"""Integrations of recchat with other frameworks, one module each (``chatbot.integrations.langchain``).

Nothing is imported here: each integration needs its framework installed, and only its users import it.
"""
