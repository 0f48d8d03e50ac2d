"""The app's and the project's tables, the ledger, tokens, the outbox, migrations, the
embedded server and the SQL files.
"""
