"""The database itself refuses UPDATE and DELETE on the audit table, so the trail stays append-only
even for code that bypasses the ORM.

TRUNCATE is left to privileges (the table owner can always drop triggers anyway): deployments run
the application as a role with only INSERT and SELECT on this table (docs/architecture.md), and a
truncated log is caught by verifying against an exported anchor.

SQLite (the embedded single-user default) gets no trigger: it has no per-session switch, so a
trigger would also block the test runner's table flushes; the ORM guard and the chain remain."""

from django.db import migrations

TABLE = "audit_auditevent"

POSTGRES_UP = f"""
CREATE OR REPLACE FUNCTION audit_refuse_change() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'audit events are append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER audit_no_update_delete BEFORE UPDATE OR DELETE ON {TABLE}
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();
"""
POSTGRES_DOWN = f"""
DROP TRIGGER IF EXISTS audit_no_update_delete ON {TABLE};
DROP FUNCTION IF EXISTS audit_refuse_change();
"""


def install(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.execute(POSTGRES_UP, params=None)


def remove(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.execute(POSTGRES_DOWN, params=None)


class Migration(migrations.Migration):
    dependencies = [("audit", "0001_initial")]
    operations = [migrations.RunPython(install, remove)]
