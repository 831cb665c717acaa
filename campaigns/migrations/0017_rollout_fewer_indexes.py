"""Rollout keeps only the indexes some query reads (every dispatch writes each of them).

Dropped: the single-column indexes of the campaign, device and manifest foreign keys (campaign
leads the unique (campaign, device) index, device leads (device, id) and the in-flight unique
index, nothing reads rollouts by manifest) and (device, state). The database side names the
indexes: Django's AlterField(db_index=False) on ``device`` would drop every plain-btree index on
that column alone, the partial unique index of the conflict rule among them, and re-adds the
foreign key constraints (a scan of the table each).
"""

import django.db.models.deletion
from django.db import migrations, models

# (index, column) of the foreign keys' own indexes, as Django named them in 0001.
FK_INDEXES = (
    ("campaigns_rollout_campaign_id_696e75ba", "campaign_id"),
    ("campaigns_rollout_device_id_201f5d8e", "device_id"),
    ("campaigns_rollout_manifest_id_f3963b65", "manifest_id"),
)


class Migration(migrations.Migration):
    dependencies = [
        ('campaigns', '0016_rollout_waits'),
        ("manifests", "0009_image_encryption_keys"),
    ]

    operations = [
        migrations.RemoveIndex(model_name="rollout", name="campaigns_r_device__ceebfe_idx"),
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.RunSQL(
                    f"DROP INDEX IF EXISTS {name}",
                    reverse_sql=f"CREATE INDEX {name} ON campaigns_rollout ({column})",
                )
                for name, column in FK_INDEXES
            ],
            state_operations=[
                migrations.AlterField(
                    model_name="rollout",
                    name="campaign",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="rollouts",
                        to="campaigns.campaign",
                    ),
                ),
                migrations.AlterField(
                    model_name="rollout",
                    name="device",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="rollouts",
                        to="campaigns.device",
                    ),
                ),
                migrations.AlterField(
                    model_name="rollout",
                    name="manifest",
                    field=models.ForeignKey(
                        blank=True,
                        db_index=False,
                        null=True,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="+",
                        to="manifests.manifest",
                    ),
                ),
            ],
        ),
    ]
