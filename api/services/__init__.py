"""What routes call: validation against the DB, commit, enqueue. Routes stay thin; SQL stays in crud."""
