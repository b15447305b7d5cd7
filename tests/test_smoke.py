from tests.conftest import check_ledger


def test_agent_transfers_scrip_over_a_real_server(server):
    alice, bob = server.agent("alice"), server.agent("bob")
    alice.transfer("bob", 25)
    assert alice.get_state().scrip == 975
    assert bob.balance() == 1025
    assert check_ledger(server)["total_balances"] == 2000
