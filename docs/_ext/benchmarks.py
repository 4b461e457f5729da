"""placeholder"""
def setup(app):
    return {"version": "0.1", "parallel_read_safe": True}
