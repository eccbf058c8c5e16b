def test_create_session_returns_envelope(api):
    response = api.post("/api/v1/chatkit/sessions", {}, format="json")
    assert response.status_code == 201
    assert response.json()["data"]["title"] == "New Chat"
