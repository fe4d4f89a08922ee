"""vae_tutorial"""
