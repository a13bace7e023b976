"""The Streamlit page: it only renders; what it shows and does lives in plain modules beside it."""
