-- Least privilege: what the role that runs the jobs needs, and nothing more.
--
-- The jobs, `undo`, `why`, `token create/revoke` and the admin API connect as this
-- role (the user in DATABASE_URL). It changes rows, never structure: it cannot
-- create, alter, drop or truncate a table. Substitute your role's name for
-- jobs_runner, and create the role first, e.g.
--     CREATE ROLE jobs_runner LOGIN PASSWORD '...';
--
-- Run this as the owner of the app's tables (or a superuser), after the app's
-- migrations and after `jobs-pipeline db upgrade`. That upgrade creates and changes
-- the schema jobs_pipeline, so it runs as a more privileged role (one allowed to
-- CREATE in the database and to own that schema), never as jobs_runner. A migration
-- that adds a table to jobs_pipeline needs its grant added here, and this file run
-- again (GRANT is idempotent).
--
-- PostgreSQL before 15 lets every role CREATE in schema public; there, also run
--     REVOKE CREATE ON SCHEMA public FROM PUBLIC;
-- jobs_pipeline_tests/test_least_privilege.py runs every job, and an undo, as a role
-- holding exactly these grants, and checks it cannot change the app's structure.

GRANT USAGE ON SCHEMA public TO jobs_runner;

-- Read: the rules' inputs, and the rows the jobs change.
GRANT SELECT ON users, global_config, promo_codes, promo_redemptions,
    targets, aims, shots, user_discipline_stats TO jobs_runner;

-- tier-expiration: the downgrade writes these four columns and no other. (Undo puts
-- them back.) An UPDATE privilege also allows SELECT ... FOR UPDATE SKIP LOCKED.
GRANT UPDATE (tier, tier_source, tier_expires_at, updated_at) ON users TO jobs_runner;

-- global-override-check: deletes an expired override. INSERT is for undo only, which
-- re-inserts a deleted override from the change ledger.
GRANT DELETE, INSERT ON global_config TO jobs_runner;

-- promo-cleanup: deactivates expired codes (is_active only).
GRANT UPDATE (is_active) ON promo_codes TO jobs_runner;

-- promo-cleanup: deletes old redemptions. INSERT is for undo only, which re-inserts
-- deleted redemptions from the change ledger.
GRANT DELETE, INSERT ON promo_redemptions TO jobs_runner;
-- promo-cleanup locks the redemptions it deletes with SELECT ... FOR UPDATE SKIP LOCKED
-- (rows the app holds are skipped, not waited for). PostgreSQL allows a row lock only
-- with UPDATE on at least one column of the table, whatever the statement then does;
-- DELETE is not enough. The job never updates a redemption: UPDATE (id) is the lock's
-- price, and adds nothing DELETE and INSERT do not already allow.
GRANT UPDATE (id) ON promo_redemptions TO jobs_runner;

-- discipline-stats-rollup: INSERT ... ON CONFLICT DO UPDATE of the derived table.
GRANT INSERT, UPDATE ON user_discipline_stats TO jobs_runner;

-- The project's own schema, and the migration version the jobs check (read only:
-- upgrades are not this role's job).
GRANT USAGE ON SCHEMA jobs_pipeline TO jobs_runner;
-- The outbox: jobs queue emails, delivery claims and records them; rows are never deleted.
GRANT SELECT, INSERT, UPDATE ON jobs_pipeline.email_outbox TO jobs_runner;
-- The ledger is append-only; promo-cleanup deletes rows past its retention.
GRANT SELECT, INSERT, DELETE ON jobs_pipeline.change_ledger TO jobs_runner;
-- Admin-API tokens: issued, looked up (last_used_at), revoked; never deleted.
GRANT SELECT, INSERT, UPDATE ON jobs_pipeline.api_tokens TO jobs_runner;
-- The UI's writes through the door: recorded, then finished with their outcome; never
-- deleted (the admin API, and `why --run`, `ui-actions`).
GRANT SELECT, INSERT, UPDATE ON jobs_pipeline.ui_actions TO jobs_runner;
-- The door's sessions: started at sign-in, ended at sign-out; never deleted.
GRANT SELECT, INSERT, UPDATE ON jobs_pipeline.ui_sessions TO jobs_runner;
GRANT SELECT ON jobs_pipeline.alembic_version TO jobs_runner;
-- No grant on the sequences: the ids are identity columns, whose sequences an INSERT
-- advances without a privilege of its own.
