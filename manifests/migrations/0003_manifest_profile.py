from django.db import migrations, models


class Migration(migrations.Migration):
    """Manifest profiles. Every class that exists already wrote the custom security counter and
    payload format, so it is "extended"; that stays the default."""

    dependencies = [
        ('manifests', '0002_device_class_delivery'),
    ]

    operations = [
        migrations.AddField(
            model_name="deviceclass",
            name="manifest_profile",
            field=models.CharField(
                choices=[
                    (
                        "standard",
                        "Standard SUIT: no custom keys, the sequence number is the floor",
                    ),
                    ("extended", "Custom security counter and payload format (-257/-258)"),
                ],
                default="extended",
                max_length=16,
            ),
        ),
    ]
