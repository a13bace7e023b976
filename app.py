"""The chat page: `python app.py [--model PATH_OR_ID] [--port 6006] [--host 127.0.0.1] [--password SECRET]`.

`python app.py` starts Streamlit privately (no usage statistics, loopback only) on this same file, which Streamlit
then runs to draw the page; `streamlit run app.py` works too (`.streamlit/config.toml` keeps it on loopback).
"""

import sys

if "streamlit" in sys.modules:  # run by Streamlit: draw the page
    from gptq_chat.ui.page import main

    main()
elif __name__ == "__main__":
    from gptq_chat.ui.launch import launch

    launch(sys.argv[1:])
