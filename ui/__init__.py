"""Streamlit app for pathologists."""
