from django.db import migrations, models


class Migration(migrations.Migration):
    """Delivery profiles. Classes that exist already keep what they did (the Package URI named
    the SUIT envelope), so they are added as "suit"; the default for new classes is "image"."""

    dependencies = [
        ('manifests', '0001_initial'),
    ]

    operations = [
        migrations.AddField(
            model_name="deviceclass",
            name="delivery",
            field=models.CharField(
                choices=[
                    ("image", "The image itself (MCUboot/LwM2M clients)"),
                    ("suit", "The SUIT envelope; the payload from the manifest's URI"),
                    ("suit-integrated", "The SUIT envelope with the payload integrated"),
                ],
                default="suit",
                max_length=16,
            ),
        ),
        migrations.AlterField(
            model_name="deviceclass",
            name="delivery",
            field=models.CharField(
                choices=[
                    ("image", "The image itself (MCUboot/LwM2M clients)"),
                    ("suit", "The SUIT envelope; the payload from the manifest's URI"),
                    ("suit-integrated", "The SUIT envelope with the payload integrated"),
                ],
                default="image",
                max_length=16,
            ),
        ),
        migrations.AddField(
            model_name="deviceclass",
            name="delivery_method",
            field=models.CharField(
                choices=[
                    ("auto", "From the device's /5/0/9 and /5/0/8"),
                    ("pull", "Pull only (write the Package URI)"),
                    ("push", "Push only (block-wise write of the package)"),
                ],
                default="auto",
                max_length=8,
            ),
        ),
    ]
