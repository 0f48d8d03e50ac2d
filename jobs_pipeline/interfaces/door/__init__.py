"""The door in front of the Dagster UI: who may pass, to which webserver, and what they did.

nginx (`deploy/nginx/`) asks the admin API at every request whether the session may
pass (`/door/check`, its `auth_request`); admins reach the full webserver, viewers a
second one started with `--read-only`, anyone else is refused. The UI's GraphQL, and its
websocket, pass through the admin API itself (`/door/graphql`), which records every
write an admin makes (`jobs_pipeline.ui_actions`) and tags the runs it launches with who
launched them.
"""
