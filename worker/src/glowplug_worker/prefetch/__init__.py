"""`glowplug-worker prefetch`: fetch model weights into a volume, verify them, publish atomically.

Nothing here imports torch; boto3 and huggingface_hub are imported only for their schemes.
"""
