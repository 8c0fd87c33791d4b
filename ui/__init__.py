"""The Streamlit research UI; talks to the API only through figsearch.client."""
