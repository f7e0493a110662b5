import torch

from ddmi.fields import Field, ImageMLP, ImageMLPSpec, image_grid, pixel_centers, sample_plane


def test_pixel_centre_grid_reads_plane_pixels_exactly():
    plane = torch.randn(2, 5, 6, 7)
    coords = image_grid(6, 7).reshape(1, -1, 2).expand(2, -1, -1)
    out = sample_plane(plane, coords)                       # (B, H*W, C)
    assert torch.allclose(out.transpose(1, 2).reshape(2, 5, 6, 7), plane, atol=1e-5)


def test_coordinate_channel_order_is_x_then_y():
    plane = torch.arange(4.0).reshape(1, 1, 1, 4).expand(1, 1, 3, 4).contiguous()  # value = column
    left_right = torch.tensor([[[-0.75, 0.0], [0.75, 0.0]]])
    assert sample_plane(plane, left_right).flatten().tolist() == [0.0, 3.0]
    assert pixel_centers(4).tolist() == [-0.75, -0.25, 0.25, 0.75]


def test_chunked_query_equals_one_pass_and_slicing():
    torch.manual_seed(0)
    mlp = ImageMLP(ImageMLPSpec(plane_channels=8, num_scales=2, hidden=32, scale_embed_dim=16))
    planes = [torch.randn(3, 8, 4, 4), torch.randn(3, 8, 8, 8)]
    si = torch.ones(3)
    coords = torch.rand(1000, 2) * 2 - 1
    whole = Field(planes, mlp, {"si": si}, chunk=10**6).query(coords)
    chunked = Field(planes, mlp, {"si": si}, chunk=97).query(coords)
    assert whole.shape == (3, 1000, 3)
    assert torch.allclose(whole, chunked, atol=1e-5)
    assert torch.allclose(Field(planes, mlp, {"si": si})[1].query(coords), whole[1:2], atol=1e-5)


def test_streamed_image_render_equals_one_query_of_the_whole_grid():
    """render_image makes each chunk's coordinates itself (whole rows, the last block short) and
    writes into one output: it must equal querying the full pixel-centre grid at once."""
    from ddmi.domains.image.pixels import render_image, scale_injection
    torch.manual_seed(0)
    mlp = ImageMLP(ImageMLPSpec(plane_channels=8, num_scales=2, hidden=32, scale_embed_dim=16))
    planes = [torch.randn(2, 8, 4, 4), torch.randn(2, 8, 8, 8)]
    field = Field(planes, mlp, {}, chunk=50)                       # 2 rows of 24 per call, 25 rows
    out = render_image(field, 24, train_resolution=16, height=25)
    si = torch.full((2,), scale_injection(16, 24))
    ref = Field(planes, mlp, {}, chunk=10**6).query(image_grid(25, 24).reshape(-1, 2), si=si)
    assert out.shape == (2, 3, 25, 24)
    assert torch.allclose(out, ref.transpose(1, 2).reshape(2, 3, 25, 24).clamp(-1, 1), atol=1e-5)
