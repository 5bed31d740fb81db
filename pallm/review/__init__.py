"""The review store: the database the annotation UI and the pipeline share.

`db` opens it (SQLite file by default, PostgreSQL by URL) and migrates it with Alembic; `models` is its schema;
`importer` puts a built dataset's items in it; `workflow` hands out items and records decisions; `agreement`
measures how far labelers agree; `export` writes the decisions back beside the shards.
"""
