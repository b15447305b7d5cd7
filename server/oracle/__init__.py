"""The mint's machinery (DESIGN.md "The oracle (the mint)"); the artifact agents invoke
is server/genesis/oracle.py.

  * auction  - pure rules: the schedule, second-price with `slots` winners, income split;
  * scoring  - pluggable scorers (0-100 and a reason): offline (evidence the world holds)
               and llm (the gateway's backend, charged to the mint's own llm_budget);
  * runner   - the server's background task that resolves every round whose time has
               passed; LLM scoring happens there, outside the writer thread.
"""
